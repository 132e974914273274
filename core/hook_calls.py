"""Calls a plugin hook the one way the core does: keyword arguments in, answers checked, the failing plugin named.

What a hook must answer comes from its spec's return annotation in core/hookspecs.py
(`Money | None`, `list[Discount] | None`, ...). Every answer is re-validated, because a plugin can
build a model without validation (`Money.model_construct(amount=0.1, ...)`): a float anywhere in
it, a field its type refuses, or a field of another type than validation makes of it (an amount
held as a str) is the plugin's error, never an internal one. The core then works on the freshly
validated copy, so a plugin's object is never stored either. An answer of a plugin's own subclass
of a model is validated by it, then as the OMS's class, whose copy the core gets: the subclass's
validators may have replaced the OMS's (a Money's minor units).

Which plugin answered is recorded by the manager (`recording`), because pluggy returns only the
result: a firstresult hook's answer or a collect-all hook's list is matched, by identity, to the
plugin that returned it. Which plugin raised is read from the traceback: the outermost frame that
runs one of the hook's implementations is the plugin pluggy called (a wrapper's, only when the
error did not merely pass through it: `_raised_by`). Calling the implementations
one by one instead would re-implement pluggy's ordering and wrappers, which the plugin guide
tells authors to rely on.
"""

from __future__ import annotations

import datetime
import functools
import inspect
import logging
import types
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from decimal import Decimal
from types import MappingProxyType
from typing import Annotated, Any, NamedTuple

from pydantic import BaseModel, TypeAdapter, ValidationError

from core.card_numbers import mask_card_numbers
from core.errors import PluginError, PluginUnavailable, TransientError, said
from core.log_text import escape_for_log
from core.models import VisibleText

Accept = Callable[[Any], Any]

logger = logging.getLogger(__name__)


class _Answer(NamedTuple):
    hook: str
    plugin: str
    value: object


# The non-None answers given while call_hook listens (None: nobody listens, nothing is kept).
_answers: ContextVar[list[_Answer] | None] = ContextVar("oms_plugin_answers", default=None)
# The keys of what the plugins called now work for (`calls_about`): none outside a candidate's work.
_about: ContextVar[Mapping[str, str]] = ContextVar("oms_plugin_calls_about", default=MappingProxyType({}))


@contextmanager
def calls_about(**keys: str) -> Iterator[None]:
    """Within it, the lines a plugin's failure writes here (`plugin raised`, `plugin temporarily
    unavailable`) carry `keys` (`order_id=...`): a scheduled pass sets them around each candidate's
    work (a stock take around each order it rejects), as no key of its invocation names the order
    (the API's and a workflow step's do), so the failure's one ERROR line names the order the
    pass's own line about it names at WARNING. Nested, the inner keys join the outer ones. They are
    gone once the work ends, raised or not: no later candidate, nor a warm invocation after, has
    its line name this one."""
    token = _about.set(MappingProxyType({**_about.get(), **keys}))
    try:
        yield
    finally:
        _about.reset(token)


def recording(function: Callable[..., Any], hook: str, plugin: str) -> Callable[..., Any]:
    """`function` (one plugin's implementation of `hook`), noting who gave each answer."""

    @functools.wraps(function)
    def recorded(*args: Any, **kwargs: Any) -> Any:
        answer = function(*args, **kwargs)
        answers = _answers.get()
        if answers is not None and answer is not None:
            answers.append(_Answer(hook, plugin, answer))
        return answer

    return recorded


class _Shape(NamedTuple):
    many: bool  # each plugin answers a list of `item`
    item: Any  # a type, or a union of types (types.UnionType)


@functools.cache
def _shape(spec_function: Callable[..., Any]) -> _Shape:
    # The answer's annotation alone: a parameter's may name a type core/hookspecs.py imports only
    # for type checkers (oms_notify's Notification).
    returns = types.SimpleNamespace(__annotations__={"return": spec_function.__annotations__["return"]})
    answer = typing.get_type_hints(returns, globalns=spec_function.__globals__)["return"]
    if typing.get_origin(answer) in (typing.Union, types.UnionType):
        (answer,) = [arg for arg in typing.get_args(answer) if arg is not type(None)]
    if typing.get_origin(answer) is list:
        return _Shape(True, typing.get_args(answer)[0])
    return _Shape(False, answer)


def call_hook(hook: Any, accept: Accept | None = None, /, **kwargs: Any) -> Any:
    """Call `hook` (a `plugins.hook.oms_...` caller) with `kwargs` and return its checked answer:
    for a firstresult hook the answer (a list answer's items, each checked) or None, for a
    collect-all hook the items of every plugin's list, in call order. `accept(item)` runs the
    caller's own checks on each item (and may return a replacement); a PluginError it raises is
    reported against the plugin that gave the item.

    A plugin that raises becomes PluginError naming it, whatever it raises (SystemExit and other
    BaseExceptions too) but KeyboardInterrupt and what the hook's spec lists as its `refusals` (a
    sender's body refused whole: InvalidRequest, of oms_carrier_tracking_update), which pass
    through unchanged and unlogged; so does the manager's PluginUnavailable (a plugin failed to
    load). A plugin's TransientError (a gateway briefly down) passes on,
    of its class, and a TimeoutError or ConnectionError becomes one: either names the plugin, the
    hook and the exception's type alone (`unavailable`), its words going to the log line
    `plugin temporarily unavailable`, never to the client, the order's history or a workflow's
    error: a client library's words often hold what it connected to (a connection string with
    its password, an internal host, a token)."""
    name: str = hook.name
    answers: list[_Answer] = []
    token = _answers.set(answers)
    try:
        result = hook(**kwargs)
    except PluginUnavailable as exc:
        plugin = _raised_by(hook, exc)
        if plugin == "(unknown)":
            raise  # the manager's own: a plugin failed to load, named as shown_reason says
        # A plugin's own, which it has no business raising: its words would go to any key.
        raise _failed(plugin, name, exc) from exc
    except TransientError as exc:
        # The plugin's own error goes on, its words replaced: its class may be what a caller or a
        # retry matches.
        plugin = _raised_by(hook, exc)
        exc.message = unavailable(plugin, name, exc, "said it is temporarily unavailable")
        exc.args = (exc.message,)
        exc.details = [{"plugin": plugin, "hook": name}]
        raise
    except (TimeoutError, ConnectionError) as exc:
        # A remote service (gateway, carrier, tax service) did not answer: worth retrying, and safe
        # to, because every hook that changes something remotely is given an idempotency key.
        plugin = _raised_by(hook, exc)
        raise TransientError(
            unavailable(plugin, name, exc, "got no answer"), details=[{"plugin": plugin, "hook": name}]
        ) from exc
    except KeyboardInterrupt:
        raise  # the operator's Ctrl-C, not the plugin's answer
    except BaseException as exc:
        if isinstance(exc, getattr(hook.spec.function, "refusals", ())):
            raise  # what its spec documents as a refusal of what the plugin was given: no failure of it
        # SystemExit (a library's sys.exit) or any class of the plugin's own outside Exception too:
        # past here nothing maps it, and the Lambda would die without the contract's error shape.
        raise _failed(_raised_by(hook, exc), name, exc) from exc
    finally:
        _answers.reset(token)

    shape = _shape(hook.spec.function)
    if result is None:
        return None
    if not shape.many:
        return _checked(result, shape.item, name, _given_by(hook, answers, result), accept)
    # pluggy returns a firstresult hook's one answer as it is, a collect-all hook's in a list.
    lists = [result] if hook.spec.opts.get("firstresult") else result
    items = []
    for answer in lists:
        plugin = _given_by(hook, answers, answer)
        if not isinstance(answer, list | tuple):
            raise _refused(plugin, name, f"returned {type(answer).__name__}, expected a list")
        items.extend(_checked(item, shape.item, name, plugin, accept) for item in answer)
    return items


def _failed(plugin: str, hook: str, exc: BaseException) -> PluginError:
    """What the client, the order's history and a workflow's error are told of `exc`, which a plugin
    raised: the plugin, the hook and the exception's type. Its words and traceback go to the log
    line `plugin raised` (ERROR, with `plugin`, `hook`, `error`, `reason` as `unavailable` logs it,
    and the traceback), in whichever function called the plugin: a workflow step, the notifier or
    the reconciler has no other line that holds them (with the keys of the order a pass works on:
    `calls_about`). It is the failure's one ERROR line: the PluginError is marked `logged`, so a
    line that reports it (the API's `plugin failed`) does not write the traceback a second time."""
    error = type(exc).__name__
    logger.error(
        "plugin raised",
        exc_info=exc,
        extra={
            **_about.get(),
            "plugin": plugin,
            "hook": hook,
            "error": plugin_words(error),
            "reason": _logged_words(exc),
        },
    )
    failed = PluginError(
        f"plugin {plugin} failed in {hook}: {error}; its words are in the log line `plugin raised`",
        details=[{"plugin": plugin, "hook": hook}],
    )
    failed.logged = True
    return failed


def unavailable(plugin: str, hook: str, exc: BaseException, said: str) -> str:
    """What the client, the order's history and a workflow's error are told of `exc`, a plugin's
    failure worth retrying: the plugin, the hook and the exception's type. Its words, which may
    hold a password or a host, go to the log line `plugin temporarily unavailable` (WARNING, with
    `plugin`, `hook`, `error` and `reason`: the words escaped, at most MAX_LOGGED_WORDS_CHARS; and
    the keys of the order a pass works on: `calls_about`)."""
    error = plugin_words(type(exc).__name__)
    words = exc.message if isinstance(exc, TransientError) else exc
    logger.warning(
        "plugin temporarily unavailable",
        extra={**_about.get(), "plugin": plugin, "hook": hook, "error": error, "reason": _logged_words(words)},
    )
    return f"plugin {plugin} {said} in {hook}: {error}; its words are in the log line `plugin temporarily unavailable`"


def _logged_words(words: object) -> str:
    """A failure's words as a log line holds them: a card number masked, escaped, at most
    MAX_LOGGED_WORDS_CHARS."""
    reason = escape_for_log(mask_card_numbers(printed(words)))
    if len(reason) > MAX_LOGGED_WORDS_CHARS:
        reason = reason[: MAX_LOGGED_WORDS_CHARS - 1] + "…"
    return reason


def printed(words: object) -> str:
    """str(words), or what it is when its own __str__ raises (a plugin's or a client library's
    exception class may)."""
    try:
        return str(words)
    except Exception as failure:
        return f"<unprintable: its __str__ raised {type(failure).__name__}>"


# A plugin's words: a gateway's on a refusal (PaymentResult.message) reach the client's 502 and
# the order's history; a failure's (a TransientError's), the log alone (`unavailable`); why one
# failed to load, GET /plugins and the log alone. Their card numbers masked, their controls and
# bidi overrides made visible, cut as history entries cut such words.
MAX_PLUGIN_WORDS_CHARS = 500
# A failure's words in the log line: enough for any client library's message, well within what
# a CloudWatch log event holds (256 KB).
MAX_LOGGED_WORDS_CHARS = 10_000
_WORDS = TypeAdapter(Annotated[str, VisibleText])


def plugin_words(message: str) -> str:
    """`message` with its card numbers masked (a gateway's words are text from outside, kept in
    the history) and its controls and bidi overrides replaced by U+FFFD, at most
    MAX_PLUGIN_WORDS_CHARS characters (a cut one ends with "…")."""
    message = mask_card_numbers(message)
    if len(message) > MAX_PLUGIN_WORDS_CHARS:
        message = message[: MAX_PLUGIN_WORDS_CHARS - 1] + "…"
    return _WORDS.validate_python(message)


def _named(expected: Any) -> str:
    """An answer's expected type as a message names it: "TrackingUpdate or RefusedTrackingEvent"
    for a list of either (oms_carrier_tracking_update)."""
    members = typing.get_args(expected) if isinstance(expected, types.UnionType) else (expected,)
    return " or ".join(member.__name__ for member in members)


def _checked(value: Any, expected: Any, hook: str, plugin: str, accept: Accept | None) -> Any:
    if not isinstance(value, expected):
        raise _refused(plugin, hook, f"returned {type(value).__name__}, expected {_named(expected)}")
    if isinstance(value, BaseModel):
        # Of an answer that may be one of several models, the one it is (the OMS's, not a subclass).
        kind = _oms_class(type(value)).__name__ if isinstance(expected, types.UnionType) else expected.__name__
        problem = _float_in(value, kind)
        if problem is None:
            try:
                fresh = _revalidated(value)
            except ValidationError as exc:
                problem = "; ".join(_validation_problem(error) for error in exc.errors()[:3])
            except Exception as exc:  # a validator tripping over what no validated model holds
                problem = f"{type(exc).__name__} while validating it"
            else:
                problem = _type_changed(value, fresh, kind)
                value = fresh
        if problem is not None:
            raise _refused(plugin, hook, f"returned a malformed {kind}: {problem}")
    if accept is None:
        return value
    try:
        return accept(value)
    except PluginUnavailable:
        raise
    except PluginError as exc:
        raise _refused(plugin, hook, exc.message) from exc


def _refused(plugin: str, hook: str, problem: str) -> PluginError:
    return PluginError(f"plugin {plugin} {problem} ({hook})", details=[{"plugin": plugin, "hook": hook}])


def answer_refused(error: BaseException) -> bool:
    """Whether `error` is call_hook's refusal of what the plugins answered: each of them ran to its
    end (one that acts, a notifier that sends, acted) and one returned what the hook's spec refuses.
    Not a plugin's raise (PluginError.logged), nor the manager's PluginUnavailable (none ran)."""
    return isinstance(error, PluginError) and not isinstance(error, PluginUnavailable) and not error.logged


def _validation_problem(error: Any) -> str:
    """One validation error as a refusal names it: its field and pydantic's words, or, for what a
    validator of the plugin's own code raised (a subclass of the OMS's model), the exception's type
    alone: its words are the plugin's, which may hold what its client library connected to, and a
    refusal reaches the client and the order's history."""
    where = ".".join(str(part) for part in error.get("loc", ()))
    raised = (error.get("ctx") or {}).get("error")
    problem = said(error)
    if isinstance(raised, BaseException) and not _the_oms_raised(raised):
        problem = f"its validator raised {type(raised).__name__}"
    return f"{where}: {problem}" if where else problem


def _the_oms_raised(exc: BaseException) -> bool:
    """Whether the validator that raised `exc` is the OMS's own: the outermost frame of its
    traceback is the validator pydantic called (pydantic-core runs no Python frame of its own)."""
    traceback = exc.__traceback__
    return traceback is not None and str(traceback.tb_frame.f_globals.get("__name__", "")).startswith("core.")


# Exact types that are no float and hold nothing: the walks below take them as they are, without
# a call each (most of an answer's fields; those calls were most of the walks' time).
_PLAIN = frozenset((str, int, bool, type(None), Decimal, datetime.datetime, datetime.date))


def _values(value: Any) -> tuple[str, Iterable[tuple[Any, Any]]]:
    """How a path suffix is written (`format(key)`), and the (key, value) of everything `value` holds."""
    if isinstance(value, BaseModel):
        return ".{}", value.__dict__.items()
    if isinstance(value, dict):
        return "[{!r}]", value.items()
    if isinstance(value, list | tuple | set | frozenset):
        return "[{}]", enumerate(value)
    return "", ()


def _float_in(value: Any, path: str) -> str | None:
    """Where a float hides in `value`: money and rates never pass through one."""
    if isinstance(value, float):
        return f"{path} is a float"
    suffix, items = _values(value)
    for key, item in items:
        if type(item) in _PLAIN:
            continue
        found = _float_in(item, path + suffix.format(key))
        if found:
            return found
    return None


def _revalidated(value: Any) -> Any:
    # Nested models first: pydantic accepts an instance of the right class without looking inside.
    if isinstance(value, BaseModel):
        fields = value.__dict__.items()
        cls = type(value)
        fresh = cls.model_validate(
            {name: item if type(item) in _PLAIN else _revalidated(item) for name, item in fields}
        )
        own = _oms_class(cls)
        if own is cls:
            return fresh
        # A plugin's subclass: its own validators ran, and may have replaced the OMS's (a Money's
        # minor units). Validated again as the OMS's class, which the core then works on.
        return own.model_validate({name: getattr(fresh, name) for name in own.model_fields})
    if isinstance(value, list | tuple):
        return type(value)(item if type(item) in _PLAIN else _revalidated(item) for item in value)
    if isinstance(value, dict):
        return {key: item if type(item) in _PLAIN else _revalidated(item) for key, item in value.items()}
    return value


@functools.cache
def _oms_class(cls: type[BaseModel]) -> type[BaseModel]:
    """The OMS's own model that `cls` is (or, a plugin's subclass, extends)."""
    return next((base for base in cls.__mro__ if base.__module__.startswith("core.")), cls)


def _type_changed(given: Any, fresh: Any, path: str) -> str | None:
    """Where validation had to change a value's type: a model whose amount is the str "1.00"
    validates, but it was not a Money when the plugin returned it. A field of a plugin's own
    subclass that the OMS's class (`fresh`, _revalidated) lacks is left out, as the core's copy is."""
    if isinstance(given, BaseModel) and isinstance(fresh, BaseModel):
        for name, item in given.__dict__.items():
            if name not in fresh.__dict__:
                continue
            fresh_item = fresh.__dict__[name]
            if type(item) in _PLAIN and type(item) is type(fresh_item):
                continue
            found = _type_changed(item, fresh_item, f"{path}.{name}")
            if found:
                return found
        return None
    if type(given) is not type(fresh):
        return f"{path} is {type(given).__name__}, expected {type(fresh).__name__}"
    if isinstance(given, list | tuple):
        for index, (item, fresh_item) in enumerate(zip(given, fresh, strict=True)):
            found = _type_changed(item, fresh_item, f"{path}[{index}]")
            if found:
                return found
    if isinstance(given, dict):
        for key, item in given.items():
            found = _type_changed(item, fresh.get(key), f"{path}[{key!r}]")
            if found:
                return found
    return None


def _given_by(hook: Any, answers: list[_Answer], answer: object) -> str:
    for given in answers:
        if given.value is answer and given.hook == hook.name:
            return given.plugin
    # Not any plugin's own answer: a wrapper replaced it.
    wrappers = [impl.plugin_name for impl in hook.get_hookimpls() if impl.wrapper or impl.hookwrapper]
    return " or ".join(wrappers) or "(unknown)"


def _raised_by(hook: Any, exc: BaseException) -> str:
    """The plugin whose implementation raised `exc`: the outermost frame in its traceback that runs
    one of the hook's implementations, a wrapper's only when no other's is under it. A new-style
    wrapper's `yield` raises what the implementations it wraps raised, so its frame sits above
    theirs: a wrapper that lets the error through is not the plugin that failed."""
    impl_of = {_code(impl.function): impl for impl in hook.get_hookimpls()}
    wrapper = None
    traceback = exc.__traceback__
    while traceback is not None:
        impl = impl_of.get(traceback.tb_frame.f_code)
        if impl is not None:
            if not (impl.wrapper or impl.hookwrapper):
                return impl.plugin_name
            wrapper = wrapper or impl.plugin_name
        traceback = traceback.tb_next
    return wrapper or "(unknown)"


def _code(function: Any) -> types.CodeType | None:
    # The manager wraps each implementation to record its answers: match the plugin's own code.
    return getattr(inspect.unwrap(function), "__code__", None)

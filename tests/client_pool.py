"""botocore clients served again in the test process once nothing holds them and nothing touched them.

A botocore client costs 3.5-7 ms of CPU to build (the session's event handlers copied, the
configuration resolved from the environment, an SSL context, a client class made); the suite built
about 1.7 of them per integration test (the functions' containers after each account's reset of
the composition root, the tests' own, the Step Functions interpreter's Lambda clients), some 8 %
of the integration tests' CPU. A client holds no account state (moto's backends are reset at each
mock_aws() either way), so a client built for the same arguments, on the same session, under the
same AWS_* environment, serves a later test as a new one would, provided:

- nothing but the pool holds it, its ClientMeta or its event system (reference counts as they were
  when it was built): no test, container, service, stack or monkeypatch that had it can reach it
  again, so none can change it while another test uses it;
- its event system was never registered on or unregistered from since it was built (a test's
  hooks, even those it removed again);
- its attributes, its class's (each client has a class of its own), its ClientMeta's and its
  Config's are the objects they were when it was built (no monkeypatch left over, nothing set);
- its retry quota (standard mode, per client) is as it was built: a test's throttled calls do not
  leave the next one with fewer retries.

Anything else is built new, as botocore builds it; so is every client with an endpoint URL named
by AWS_ENDPOINT_URL or its service's AWS_ENDPOINT_URL_* (a local stack names its own for S3 alone),
or given, unless it is a running local stack's AWS server (moto's interpreter builds a Lambda
client on it for every task it runs): those are kept until the stack stops (tests/conftest.py), and
so is every client built while the environment names a local server (a stack names its own for S3,
AWS_ENDPOINT_URL_S3: its functions' other clients are kept), for a key no later stack's matches.
tests/integration/test_aws_fixture.py shows each of these isolates and that an untouched client is served again.
"""

from __future__ import annotations

import inspect
import os
import sys
import threading
import weakref
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import botocore.hooks
import botocore.session
import botocore.utils

# What botocore reads from the environment when it builds a client (and its HTTP session).
_ENVIRONMENT_PREFIXES = ("AWS_", "BOTO")
_ENVIRONMENT_WORDS = ("PROXY", "CA_BUNDLE")
# The clients kept per session and arguments, the most recently built (a test rarely holds more than two
# at once); the pool forgets the oldest, which lives on with whatever holds it.
KEPT_PER_KEY = 4

_guard = threading.Lock()
_live_ports: set[int] = set()  # local stacks' AWS servers (serving, stopped)
_stack_sessions: dict[int, Any] = {}  # a serving stack's port -> its own botocore session
_kept: weakref.WeakKeyDictionary[Any, dict[tuple[Any, ...], list[_Kept]]] = weakref.WeakKeyDictionary()
_create_client = botocore.session.Session.create_client
_PARAMETERS = tuple(inspect.signature(_create_client).parameters)[1:]  # after self
_register_section = botocore.hooks.HierarchicalEmitter._register_section
_unregister = botocore.hooks.HierarchicalEmitter.unregister


@dataclass
class _Kept:
    client: Any
    references: tuple[int, int, int, int]
    changes: int
    attributes: dict[str, Any]
    class_attributes: dict[str, Any]
    meta_attributes: dict[str, Any]
    config_attributes: dict[str, Any]
    quota: tuple[Any, ...]


@dataclass
class Counts:
    built: int = 0
    served_again: int = 0


counts = Counts()


def _register_section_counted(self: Any, *args: Any, **kwargs: Any) -> Any:
    self._oms_changes = getattr(self, "_oms_changes", 0) + 1
    return _register_section(self, *args, **kwargs)


def _unregister_counted(self: Any, *args: Any, **kwargs: Any) -> Any:
    self._oms_changes = getattr(self, "_oms_changes", 0) + 1
    return _unregister(self, *args, **kwargs)


def _key(session: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...] | None:
    """What the client is built from, or None when it is not to be kept."""
    given = dict(zip(_PARAMETERS, args, strict=False)) | kwargs
    environment = tuple(
        sorted(
            (name, value)
            for name, value in os.environ.items()
            if name.startswith(_ENVIRONMENT_PREFIXES) or any(word in name.upper() for word in _ENVIRONMENT_WORDS)
        )
    )
    if _endpoint_configured(given.get("service_name"), environment):
        return None
    port = None
    if given.get("endpoint_url"):
        endpoint = urlsplit(str(given["endpoint_url"]))
        if endpoint.hostname not in ("localhost", "127.0.0.1") or endpoint.port not in _live_ports:
            return None
        port = endpoint.port
    config = given.pop("config", None)
    options = None if config is None else repr(sorted(config._user_provided_options.items()))
    return (port, _local_ports(environment), repr(sorted(given.items())), options, environment)


def _local_ports(environment: tuple[tuple[str, str], ...]) -> frozenset[int | None]:
    """The local servers the environment's endpoint variables name: a stack names its own for S3,
    from its start (before it is serving) to its stop, when its clients are forgotten."""
    endpoints = (urlsplit(value) for name, value in environment if name.startswith("AWS_ENDPOINT_URL"))
    return frozenset(endpoint.port for endpoint in endpoints if endpoint.hostname in ("localhost", "127.0.0.1"))


def _endpoint_configured(service: Any, environment: tuple[tuple[str, str], ...]) -> bool:
    """Whether botocore's environment names an endpoint for `service`: AWS_ENDPOINT_URL, or
    AWS_ENDPOINT_URL_<its service id> (a local stack sets AWS_ENDPOINT_URL_S3 alone)."""
    names = {name for name, _ in environment if name.startswith("AWS_ENDPOINT_URL")}
    if not names:
        return False
    if "AWS_ENDPOINT_URL" in names or not isinstance(service, str):
        return True
    # As botocore's ConfiguredEndpointProvider names it, from the client's name.
    name = botocore.utils.SERVICE_NAME_ALIASES.get(service, service)
    service_id = botocore.utils.CLIENT_NAME_TO_HYPHENIZED_SERVICE_ID_OVERRIDES.get(name, name)
    return f"AWS_ENDPOINT_URL_{service_id.replace('-', '_').upper()}" in names


def _events(client: Any) -> Any:
    events = client.meta.events
    return getattr(events, "_emitter", events)


def _quota(client: Any) -> tuple[Any, ...]:
    """The client's standard-mode retry quota, as it stands (empty without one)."""
    service = client.meta.service_model.service_id.hyphenize()
    for handler in _events(client)._handlers.prefix_search(f"needs-retry.{service}"):
        checker = getattr(getattr(handler, "__self__", None), "_retry_quota", None)
        if checker is not None:
            return (checker._quota._available_capacity, checker._last_amount_acquired)
    return ()


def _references(client: Any) -> tuple[int, int, int, int]:
    # Counted the same way where it is built and where it is looked for: `client` here, the
    # argument of getrefcount, and the pool's list (`entry.client` once kept).
    return (
        sys.getrefcount(client),
        sys.getrefcount(client.meta),
        sys.getrefcount(client.meta.events),
        sys.getrefcount(_events(client)),
    )


def _untouched(entry: _Kept) -> bool:
    client = entry.client
    return (
        _references(client) == entry.references
        and getattr(_events(client), "_oms_changes", 0) == entry.changes
        and _same(vars(client), entry.attributes)
        and _same(type(client).__dict__, entry.class_attributes)
        and _same(vars(client.meta), entry.meta_attributes)
        and _same(vars(client.meta.config), entry.config_attributes)
        and _quota(client) == entry.quota
    )


def _same(now: Any, then: dict[str, Any]) -> bool:
    return len(now) == len(then) and all(now.get(name, then) is value for name, value in then.items())


def _kept_create_client(self: Any, *args: Any, **kwargs: Any) -> Any:
    key = _key(self, args, kwargs)
    if key is None:
        return _create_client(self, *args, **kwargs)
    with _guard:
        entries = _kept.setdefault(self, {}).setdefault(key, [])
        for entry in entries:
            if _untouched(entry):
                counts.served_again += 1
                return entry.client
    client = _create_client(self, *args, **kwargs)
    counts.built += 1
    client.exceptions  # noqa: B018 (made on first use, by the session's factory: made now, so kept as made)
    with _guard:
        if key[0] is not None and key[0] not in _live_ports:
            return client  # its server stopped meanwhile
        entries = _kept.setdefault(self, {}).setdefault(key, [])
        if len(entries) >= KEPT_PER_KEY:
            del entries[0]  # the longest held (by a test, a stack, or garbage the collector has not freed)
        entry = _Kept(
            client,
            (0, 0, 0, 0),
            getattr(_events(client), "_oms_changes", 0),
            dict(vars(client)),
            dict(type(client).__dict__),
            dict(vars(client.meta)),
            dict(vars(client.meta.config)),
            _quota(client),
        )
        entries.append(entry)
        entry.references = _references(client)  # the caller's `client` stands for the pool's list
    return client


def serving(port: int, session: Any = None) -> None:
    """A local stack's AWS server listens on `port` (localhost) until stopped(port): the clients
    built for it (moto's interpreter's Lambda clients, a test's) are kept meanwhile, and so are
    those of `session`, the stack's own botocore session (infra/local/process.py), if given."""
    with _guard:
        _live_ports.add(port)
        if session is not None:
            _stack_sessions[port] = session


def stopped(port: int) -> None:
    """The server on `port` stopped: every client kept for it is forgotten (a later server on the
    same port gets new clients, with new connections), and so is every client built while the
    environment named it (no later environment is that one) and every client of its session."""
    with _guard:
        _live_ports.discard(port)
        # The stack's session is weakly keyed, but an S3 client holds its session: kept, it held
        # the session, and every client kept for it, for good.
        if port in _stack_sessions:
            _kept.pop(_stack_sessions.pop(port), None)
        for keyed in list(_kept.values()):
            for key in [key for key in keyed if key[0] == port or port in key[1]]:
                del keyed[key]


def install() -> None:
    """Every botocore session of the test process keeps its clients (tests/conftest.py, once)."""
    botocore.hooks.HierarchicalEmitter._register_section = _register_section_counted  # type: ignore[method-assign]
    botocore.hooks.HierarchicalEmitter.unregister = _unregister_counted  # type: ignore[method-assign]
    botocore.session.Session.create_client = _kept_create_client  # type: ignore[method-assign]

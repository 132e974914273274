"""Settings shared by the whole suite."""

from hypothesis import settings

# No per-example deadline: on a loaded 2-core machine a 200 ms example is a scheduling accident, not
# a bug. Properties still fail on what they assert; `make bench` is where time is measured.
settings.register_profile("oms", deadline=None)
settings.load_profile("oms")

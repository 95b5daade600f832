"""course_utils.gateway: the facade re-exports every name from its one home module."""

from __future__ import annotations


def test_gateway_reexports_every_name_from_its_one_home():
    import importlib

    from course_utils import gateway

    homes = {
        name: importlib.import_module(f"course_utils.{name}")
        for name in ("resilience", "ratelimit", "caches", "cascade", "timing")
    }
    owner = {}
    for mod in homes.values():
        for name in mod.__all__:
            obj = getattr(mod, name)
            if callable(obj):  # defined there, not imported from elsewhere
                assert obj.__module__ == mod.__name__, name
            owner[name] = mod
    for name in gateway.__all__:
        assert name in owner, f"{name} has no home module"
        assert getattr(gateway, name) is getattr(owner[name], name)

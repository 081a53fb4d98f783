from fault_helpers import processes  # noqa: F401 - the fixture, for every test in this tier

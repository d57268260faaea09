"""Here so that pytest puts tests/ on sys.path: the test packages import the shared helpers
(simclr_testing.py, photos.py) by name. The settings live in simclr_testing.py, a module name of its own
(`from conftest import ...` would be ambiguous with tests/cluster/conftest.py)."""

"""The test suite: a package, so pytest imports conftest.py and each test module once, under the
dotted name the tests import it by (``tests.conftest``, ``tests.mapping.test_cosmic_mappings``)."""

"""Code the tests share: data generators, local servers, process helpers.

Imported as ``tests.helpers.<module>`` (pytest puts the checkout on ``sys.path``: ``pythonpath = ["."]`` in
pyproject.toml). Test modules import from here, never from each other.
"""

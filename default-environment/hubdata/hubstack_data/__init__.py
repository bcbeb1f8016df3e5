"""The hub's storage connections by name in a hubstack server (``hubdata``, ``hub://``)."""

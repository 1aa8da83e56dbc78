"""Plain helpers shared by the lowest modules: no state, no I/O beyond what a function names,
and no import of any other ``entra_tokend`` module (the layer below everything, model included).

- ``files``: a bounded, non-blocking read of a regular file, checked with ``fstat`` first;
- ``jwt``: a JWT's claims, decoded without verification;
- ``net``: the loopback test, ``host:port`` text, characters a URL must not hide;
- ``pem``: whether text is a CA bundle OpenSSL can load;
- ``formats``: the output format names and the pure checks of their settings.
"""

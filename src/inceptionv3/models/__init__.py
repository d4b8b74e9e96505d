"""The networks: InceptionV3 (``inception``), the seed network (``mini``), their shared head (``base``),
the feature taps (``taps``), named configurations (``configs``), networks by name (``builder``) and what
a network costs (``summary``).

Nothing here imports from the rest of the package: models sit at the bottom of the dependency order."""

"""Weights: the registry of published weights (``registry``), downloads and the cache (``hub``), reading
and writing files (``io``), loading into a network with the key-mismatch report (``load``), the
preprocessing a set of weights expects (``preprocess``) and converters from other frameworks
(``convert``).

Weights sit above the networks (they build them) and below everything that runs them."""

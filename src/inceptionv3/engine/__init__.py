"""The inference engine: options, graph fusion, backends, the engine itself and the batched runner.

``options`` (torch-free), ``resolve``, ``fuse``, ``onnx``, ``backends``, ``inputs``, ``engine``,
``runner``: in that order each module builds only on the ones before it.
"""

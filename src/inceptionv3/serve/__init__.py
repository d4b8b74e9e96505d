"""``inceptionv3 serve``: the network behind HTTP on the one engine: REST and KServe v2 endpoints, a
dynamic batcher, Prometheus metrics and a page to try the model. ``config`` is torch- and fastapi-free
(the command line reads it); ``app.create_app`` builds the application."""

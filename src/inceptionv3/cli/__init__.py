"""The ``inceptionv3`` command: ``main`` registers the commands; each module here is one command."""

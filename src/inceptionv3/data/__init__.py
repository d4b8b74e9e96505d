"""Data: preprocessing transforms (``transforms``), image decoding (``decode``), command-line inputs to
files (``paths``), labeled datasets (``datasets``) and batched loading (``loaders``)."""

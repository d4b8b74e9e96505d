"""Training: the small-data recipe as small functions, on one process or many (torchrun), crash-safe.

config (TrainConfig, recipes; torch-free) -> setup (data, network) -> optim, ema, probe -> loop (one
epoch) -> run (`train`: the run's steps), with state (TrainState = the checkpoint layout), resume,
records, control and plot beside them. The data order is a pure function of (seed, epoch) and each
sample's augmentation of (seed, epoch, index), so a resumed or multi-process run sees exactly the
batches an uninterrupted single-process run sees.
"""

"""The process around the work: torchrun's environment, the thread budget, atomic files."""

"""What the ``auto-hookpoint`` subcommands run: each feature shown end to end on the demo
model or a local model folder. The top layer: it may use everything below it."""

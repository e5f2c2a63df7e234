"""Loka's client library: what the `loka` command, the demo and a notebook use to work with runs.

It stands on the core (`loka_api`) only: typed runs are the core's models, the checkpoint layout is the core's
reader, and kinds are named through `loka_api.kinds`. It never imports the operator, the trainer or the CLI
(`make lint` enforces it); errors are exceptions, never exit codes or printed text.
"""

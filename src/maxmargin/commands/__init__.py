"""What the ``maxmargin`` subcommands do, one module per command over one shared module.

- :mod:`~maxmargin.commands.runs`: run directories (locate, load the model and the
  test examples, train or reuse, evaluate and write the report), shared by all
- :mod:`~maxmargin.commands.checks`: command-line values checked before any work
- :mod:`~maxmargin.commands.eval`, :mod:`~maxmargin.commands.margin`,
  :mod:`~maxmargin.commands.report`, :mod:`~maxmargin.commands.quickstart`,
  :mod:`~maxmargin.commands.reproduce`: one command each

``maxmargin.cli`` parses the command line and calls one function here per command.
"""

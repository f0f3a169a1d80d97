"""``resflow eval``: the embedded models against classical restorers on held-out photographs.

One module per job: :mod:`.images` fetches and checks the held-out photographs,
:mod:`.degradations` degrades them, :mod:`.rows` runs every restorer on them and measures,
:mod:`.report` renders EVAL.md, eval.json and the figure, and :mod:`.command` is the command
line. ``resflow_fast.evaluate`` re-exports the public names.
"""

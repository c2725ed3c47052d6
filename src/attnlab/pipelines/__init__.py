"""Training runs as applications: build a task's data and tokenizers, train with attnlab.training's loop,
evaluate with the decoder (attnlab.translate / attnlab.caption) and write the run directory.

Place in the layering: applications (above training, which they drive; below serve, bench and the
commands that call them).
"""

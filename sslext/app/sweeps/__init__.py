"""Sweeps: a YAML grid of training runs (:mod:`.run`, ``sslext-sweep``) and their tables and plots (:mod:`.report`)."""

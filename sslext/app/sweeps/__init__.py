"""Sweeps: a YAML grid of training runs (:mod:`.run`, ``sslext-sweep``), their tables and plots (:mod:`.report`), and the study tables that join several sweeps (:mod:`.study`)."""

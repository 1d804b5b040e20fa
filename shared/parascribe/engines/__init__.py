"""ASR engines behind one interface (:class:`parascribe.engines.base.AsrEngine`)."""

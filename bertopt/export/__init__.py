"""``bertopt export``: options (light), stage, and the torch model library (:mod:`.torch_model`)."""

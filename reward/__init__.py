"""Everything up to a trained reward model: tasks, generation, annotation, PRM/ORM, verification."""

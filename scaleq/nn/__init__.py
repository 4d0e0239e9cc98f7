"""Small shared blocks: MLP builders, scatter helpers, checkpointed layer stacks."""

"""One router per resource: jobs, batches, predict, webhooks, cache, system."""

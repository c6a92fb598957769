"""The tenant admin's pages: staff, parties, never-log, quarantine, queue, DNS, webhooks, tokens."""

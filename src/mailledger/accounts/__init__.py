"""Synced accounts, mailbox and calendar alike: problems in words, statuses, back-off."""

"""The submission relay: AUTH, DKIM signing, the outbound queue and delivery (later issue)."""

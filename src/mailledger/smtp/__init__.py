"""The aiosmtpd kit both listeners are configurations of.

Protocol, DATA reader, spool, listener, session gate and screening.
"""

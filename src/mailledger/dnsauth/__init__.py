"""The shared DNS resolver and organisational domains: the lowest layer verify/ and domains/ use."""

"""The web pages staff sign in to (DESIGN §11): server-rendered, one small module per job."""

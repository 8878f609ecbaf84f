"""The web dashboard at `/ui`: a small static single-page app over the public REST API (nothing built at run
time; the browser signs in with an API key and calls /v1 like any other client)."""

"""Services the hub runs next to itself, each a separate process behind the proxy.

``binder``: the launch page for environments built from a git repository, and BinderHub's
build API, so that Binder share links, badges and clients work against this hub.
"""

"""The Gradio app: :func:`dualview.app.ui.build_demo` builds the page, :mod:`dualview.app.service`
computes what it shows (per-user :class:`~dualview.app.service.Workspace`, shared
:class:`~dualview.app.service.ModelHolder`)."""

"""The Gradio app, in layers that import downward only:

- :mod:`~dualview.app.models`: the shared, locked models (:class:`ModelHolder`);
- :mod:`~dualview.app.state`: one visitor's request, choices and derived results (:class:`AppState`);
- :mod:`~dualview.app.views`: presenters, figures and texts of a state;
- :mod:`~dualview.app.handlers`: what each event does, as functions of a state and input values;
- :mod:`~dualview.app.layout`: the components; :mod:`~dualview.app.ui`: the wiring;
- :mod:`~dualview.app.launch`: load, build and serve.
"""

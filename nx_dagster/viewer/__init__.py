"""Look at neurons: a terminal card (`nxd neuron`) and a static HTML neuron browser (`nxd viewer`).

  source.py   open the catalog read-only as of one snapshot; pick the model
  reader.py   everything about some neurons of a layer, as `NeuronView`s (a few queries per layer)
  heat.py     activation strength as ten levels; tokens made visible
  card.py     the terminal card (ANSI colours or a plain fallback)
  pages.py    one HTML page per neuron
  site.py     the index page and the whole folder
  serve.py    a local static server (http.server)
"""

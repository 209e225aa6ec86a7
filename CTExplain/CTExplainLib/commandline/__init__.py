"""Parts of the ``ctexplain`` command line that need neither torch nor MONAI: the choices its
options offer and its progress lines, so that ``ctexplain --help`` answers without loading them."""

"""Optional integrations, each behind an extra and imported only by whoever uses it:
``prometheus`` (``pip install 'vecna_async[prometheus]'``) and ``otel``
(``pip install 'vecna_async[otel]'``). ``import vecna_async`` never imports them."""

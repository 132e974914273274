"""Acme for the OMS: three plugins, each its own entry point of the `oms` group.

- `oms_acme.tax` (acme_tax): reduced and zero tax rates for products whose `acme.tax_class`
  attribute names a class Acme knows (books, children's clothing), in the countries it lists.
- `oms_acme.courier` (acme_courier): the `acme_next_day` shipping method for Great Britain, booked
  with Acme Courier, whose tracking webhooks deliver the shipments.
- `oms_acme.pay` (acme_pay): Acme Pay on account, payment method `acme_pay`.

Each answers only for what is its own (a product attribute, a shipping method, a carrier name, a
payment method), so installing the package changes nothing else the OMS does.
"""

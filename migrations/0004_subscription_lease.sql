-- A lease instead of a held database connection: the jobs of one Stripe subscription take turns
-- through these two columns, so a job waiting on Keycloak or Lago holds no pooled connection.
-- A crashed worker's lease simply expires.
ALTER TABLE stripe_subscriptions ADD COLUMN lease_owner text;
ALTER TABLE stripe_subscriptions ADD COLUMN lease_until timestamptz;

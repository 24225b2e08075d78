-- Realtime for subscription changes: re-create the publication with just that table.
drop publication if exists supabase_realtime;
create publication supabase_realtime for table billing.subscriptions;

create extension if not exists "uuid-ossp" with schema extensions;

create schema if not exists billing;
grant usage on schema billing to service_role;

create table billing.plans (
  id uuid primary key default extensions.uuid_generate_v4(),
  code text not null unique,
  monthly_cents integer not null check (monthly_cents >= 0),
  active boolean not null default true
);

insert into billing.plans (code, monthly_cents) values ('free', 0), ('pro', 1900), ('team', 4900);

create table billing.customers (
  user_id uuid primary key references auth.users (id) on delete cascade,
  stripe_customer_id text unique,
  created_at timestamptz not null default now()
);

create table billing.subscriptions (
  id uuid primary key default extensions.uuid_generate_v4(),
  user_id uuid not null references billing.customers (user_id) on delete cascade,
  plan_id uuid not null references billing.plans (id),
  status text not null default 'trialing',
  current_period_end timestamptz
);

create table billing.usage_events (
  id bigint generated always as identity,
  user_id uuid not null,
  quantity integer not null default 1,
  recorded_at timestamptz not null default now(),
  primary key (id, recorded_at)
) partition by range (recorded_at);

create table billing.usage_events_2024 partition of billing.usage_events
  for values from ('2024-01-01') to ('2025-01-01');
create table billing.usage_events_2025 partition of billing.usage_events
  for values from ('2025-01-01') to ('2026-01-01');
create table billing.usage_events_default partition of billing.usage_events default;

alter table billing.subscriptions enable row level security;
create policy "Users see their subscription" on billing.subscriptions
  for select to authenticated using (user_id = auth.uid());

grant select on billing.plans to anon, authenticated;
grant select on billing.subscriptions to authenticated;
grant all on all tables in schema billing to service_role;

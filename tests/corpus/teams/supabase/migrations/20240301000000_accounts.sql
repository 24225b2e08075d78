create table if not exists public.accounts (
  id uuid primary key default gen_random_uuid(),
  name text not null,
  slug text not null unique,
  personal boolean not null default false,
  created_at timestamptz not null default now()
);

create table if not exists public.account_members (
  account_id uuid not null references public.accounts (id) on delete cascade,
  user_id uuid not null references auth.users (id) on delete cascade,
  role text not null default 'member' check (role in ('owner', 'admin', 'member')),
  primary key (account_id, user_id)
);

create or replace function public.is_account_member(target uuid)
returns boolean
language sql
stable
security definer
set search_path = public
as $$
  select exists (
    select 1 from public.account_members m
    where m.account_id = target and m.user_id = auth.uid()
  );
$$;

alter table public.accounts enable row level security;
alter table public.account_members enable row level security;

create policy "Members read their accounts" on public.accounts
  for select to authenticated using (public.is_account_member(id));
create policy "Members read memberships" on public.account_members
  for select to authenticated using (public.is_account_member(account_id));

grant execute on function public.is_account_member(uuid) to authenticated;
grant select, insert, update on public.accounts, public.account_members to authenticated;

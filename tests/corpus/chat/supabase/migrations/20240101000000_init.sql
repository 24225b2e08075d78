-- Profiles for every signed-up user.
create table if not exists public.profiles (
  id uuid not null references auth.users (id) on delete cascade,
  username text unique,
  display_name text,
  bio text,
  created_at timestamptz not null default now(),
  primary key (id)
);

alter table public.profiles enable row level security;

create policy "Profiles are readable by everyone"
  on public.profiles for select
  using (true);

create policy "Owners update their profile"
  on public.profiles for update
  using (auth.uid() = id);

create or replace function public.create_profile_for_user()
returns trigger
language plpgsql
security definer set search_path = ''
as $$
begin
  insert into public.profiles (id, display_name)
  values (new.id, coalesce(new.raw_user_meta_data ->> 'full_name', new.email));
  return new;
end;
$$;

create trigger on_auth_user_created
  after insert on auth.users
  for each row execute procedure public.create_profile_for_user();

grant select on public.profiles to anon, authenticated;
grant update on public.profiles to authenticated;
grant all on public.profiles to service_role;

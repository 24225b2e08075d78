-- Replies, reactions, and a profile clean-up.
alter table public.messages add column reply_to bigint references public.messages (id) on delete set null;
alter table public.profiles add column avatar_url text;
alter table public.profiles drop column bio;

create table public.reactions (
  message_id bigint not null references public.messages (id) on delete cascade,
  user_id uuid not null references auth.users (id) on delete cascade,
  emoji text not null check (char_length(emoji) between 1 and 16),
  created_at timestamptz not null default now(),
  primary key (message_id, user_id, emoji)
);
alter table public.reactions enable row level security;
create policy "Users react as themselves" on public.reactions
  for all to authenticated using (user_id = auth.uid()) with check (user_id = auth.uid());

-- Profiles: only signed-in users may read them from now on.
drop policy "Profiles are readable by everyone" on public.profiles;
create policy "Signed-in users read profiles" on public.profiles
  for select to authenticated using (true);

-- A policy on a table an earlier migration created.
create policy "Authors delete their messages" on public.messages
  for delete to authenticated using (author_id = auth.uid());

-- New users get an avatar placeholder.
create or replace function public.create_profile_for_user()
returns trigger
language plpgsql
security definer set search_path = ''
as $$
begin
  insert into public.profiles (id, display_name, avatar_url)
  values (new.id, coalesce(new.raw_user_meta_data ->> 'full_name', new.email),
          'https://avatars.invalid/' || new.id::text);
  return new;
end;
$$;

grant select, insert, delete on public.reactions to authenticated;
revoke select on public.profiles from anon;

#!/bin/sh
# purity-check.sh NM LIBRARY - fails if the static library references a clock, socket, file,
# thread, main-loop, process or random-source symbol. libcore must stay deterministic and
# I/O-free (DESIGN.md section 2): time, randomness and messages come in as arguments.
set -eu
nm_bin=$1
lib=$2
forbidden='^(time|clock|clock_gettime|gettimeofday|ftime|times|localtime.*|gmtime.*|mktime'
forbidden=$forbidden'|g_get_monotonic_time|g_get_real_time|g_date_time_new_now.*|g_get_current_time'
forbidden=$forbidden'|g_timer_.*|g_date_set_time.*|g_usleep|sleep|usleep|nanosleep|clock_nanosleep'
forbidden=$forbidden'|socket|socketpair|connect|bind|listen|accept|accept4|send|sendto|sendmsg'
forbidden=$forbidden'|recv|recvfrom|recvmsg|shutdown|setsockopt|getsockopt|getaddrinfo|gethostbyname.*'
forbidden=$forbidden'|select|poll|ppoll|epoll_.*|inet_pton|inet_ntop|inet_aton'
forbidden=$forbidden'|open|open64|openat|creat|read|write|pread|pwrite|close|fopen.*|fdopen|freopen'
forbidden=$forbidden'|fread|fwrite|fgets|getline|stat|stat64|fstat|fstat64|lstat|mmap|mmap64|unlink'
forbidden=$forbidden'|g_file_.*|g_key_file_load_from_file|g_key_file_load_from_dirs|g_key_file_save_to_file'
forbidden=$forbidden'|g_dir_.*|g_mapped_file_.*|g_io_channel_.*|g_fopen|g_open|g_creat|g_stat|g_lstat'
forbidden=$forbidden'|pthread_.*|g_thread_.*|g_mutex_.*|g_rec_mutex_.*|g_rw_lock_.*|g_cond_.*|g_once_init_.*'
forbidden=$forbidden'|g_async_queue_.*|g_thread_pool_.*|g_private_.*'
forbidden=$forbidden'|g_main_.*|g_source_.*|g_timeout_.*|g_idle_.*|g_child_watch_.*|g_unix_.*'
forbidden=$forbidden'|g_spawn_.*|fork|vfork|execv.*|execl.*|system|popen|getpid|kill|signal|sigaction'
forbidden=$forbidden'|rand|rand_r|random|srand|srandom|drand48|lrand48|getrandom|getentropy|arc4random.*'
forbidden=$forbidden'|g_random_.*|g_rand_.*|getenv|g_getenv|secure_getenv)$'

if [ ! -f "$lib" ]; then
  echo "purity-check: $lib not found" >&2
  exit 2
fi
bad=$("$nm_bin" -u "$lib" | awk '{print $NF}' | sed 's/@.*//' | grep -E "$forbidden" | sort -u || true)
if [ -n "$bad" ]; then
  echo "purity-check: $lib references forbidden symbols:" >&2
  echo "$bad" | sed 's/^/  /' >&2
  exit 1
fi
echo "purity-check: $lib is clean ($("$nm_bin" -u "$lib" | awk '{print $NF}' | sort -u | wc -l) external symbols checked)"

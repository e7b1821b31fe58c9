{{- /*
nats.conf of the in-chart NATS. Credentials are not in it: nats-server parses $VAR values as
config syntax (a password with a space or quote breaks it), so they go in as --user/--pass args.
*/ -}}
{{- define "restem.natsConf" -}}
server_name: $POD_NAME
port: 4222
http_port: 8222
pid_file: /tmp/nats.pid
lame_duck_duration: 30s
lame_duck_grace_period: 10s
jetstream {
  store_dir: /data
  max_file_store: {{ .Values.nats.jetstream.maxFileStore }}
  max_memory_store: {{ .Values.nats.jetstream.maxMemoryStore }}
}
{{- end -}}

module vaultkeeper.dev/stack/pause

go 1.22

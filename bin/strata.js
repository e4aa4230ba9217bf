#!/usr/bin/env node
import '../dist/daemon/cli.js'

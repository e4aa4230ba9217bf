export * from './volume/index.js'
export * from './store/index.js'
export * from './errors.js'
